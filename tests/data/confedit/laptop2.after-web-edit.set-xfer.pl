# laptop2: Bob's ThinkPad, backed up through bpctunnel
# (hand-written by the admin; the web editor may rewrite parts of it)

$Conf{XferMethod} = 'rsync';
$Conf{ClientNameAlias} = [
  '127.0.0.1'
];
$Conf{ClientComment} = 'TunnelCert:sha256:9b2e7d4c1a0f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5';

$Conf{RsyncdClientPort} = '64702';
$Conf{RsyncShareName} = [
  'home',
  'etc'
];
$Conf{RsyncdPasswd} = 'unused';

# Later assignments win in Perl:
$Conf{RsyncdClientPort} = '64702';
