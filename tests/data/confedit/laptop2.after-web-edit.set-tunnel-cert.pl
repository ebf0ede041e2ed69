# laptop2: Bob's ThinkPad, backed up through bpctunnel
# (hand-written by the admin; the web editor may rewrite parts of it)

$Conf{XferMethod} = 'rsyncd';
$Conf{ClientNameAlias} = [
  '127.0.0.1'
];
$Conf{ClientComment} = 'TunnelCert:sha256:c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789';

$Conf{RsyncdClientPort} = '64702';
$Conf{RsyncShareName} = [
  'home',
  'etc'
];
$Conf{RsyncdPasswd} = 'unused';

# Later assignments win in Perl:
$Conf{RsyncdClientPort} = '64702';
