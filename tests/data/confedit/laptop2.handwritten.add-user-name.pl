# laptop2: Bob's ThinkPad, backed up through bpctunnel
# (hand-written by the admin; the web editor may rewrite parts of it)

$Conf{XferMethod} = "rsyncd";
$Conf{ClientNameAlias} = ['127.0.0.1'];   # the tunnel endpoint

# Old fingerprint, replaced on 2026-03-01 -- must NOT authorize anyone:
#$Conf{ClientComment} = 'TunnelCert:sha256:0000000000000000000000000000000000000000000000000000000000000000';
$Conf{ClientComment} = 'TunnelCert:sha256:1111111111111111111111111111111111111111111111111111111111111111';

$Conf{RsyncdClientPort} = 64799;
$Conf{RsyncShareName} = [
    'home',   # /home/bob
    'etc',
];
$Conf{RsyncdPasswd} = 'unused';

# Later assignments win in Perl:
$Conf{RsyncdClientPort} = 64702;
$Conf{RsyncdUserName} = '';
