$Conf{ClientComment} = 'Alice\'s laptop TunnelCert:sha256:3f1c5be8a9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b';
$Conf{ClientNameAlias} = [
  '127.0.0.1'
];
$Conf{RsyncShareName} = ['documents', 'photos'];
$Conf{RsyncdClientPort} = '64701';
$Conf{RsyncdPasswd} = 'unused';
$Conf{RsyncdUserName} = '';
$Conf{XferMethod} = 'rsyncd';
