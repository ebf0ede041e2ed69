$Conf{ClientComment} = 'Alice\'s laptop';
$Conf{ClientNameAlias} = [
  '127.0.0.1'
];
$Conf{RsyncShareName} = [
  'documents',
  'photos',
  'My Music'
];
$Conf{RsyncdClientPort} = '64701';
$Conf{RsyncdPasswd} = 'unused';
$Conf{RsyncdUserName} = '';
$Conf{XferMethod} = 'rsyncd';
