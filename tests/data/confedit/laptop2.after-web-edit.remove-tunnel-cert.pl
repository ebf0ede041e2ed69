# laptop2: Bob's ThinkPad, backed up through bpctunnel
# (hand-written by the admin; the web editor may rewrite parts of it)

$Conf{XferMethod} = 'rsyncd';
$Conf{ClientNameAlias} = [
  '127.0.0.1'
];
$Conf{ClientComment} = '';

$Conf{RsyncdClientPort} = '64702';
$Conf{RsyncShareName} = [
  'home',
  'etc'
];
$Conf{RsyncdPasswd} = 'unused';

# Later assignments win in Perl:
$Conf{RsyncdClientPort} = '64702';
