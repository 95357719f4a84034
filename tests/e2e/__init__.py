"""End to end: a real sipd with real peers (sipp, baresip, linphone) and a real mount."""
