"""The differential fidelity harness: run a notebook's cells side by side in a local kernel (L),
a local control kernel (C) and kernels that send every cell through ``%%remote`` (R on
localhost, S over SSH through paramiko, O through OpenSSH), and report every way the remote
kernels end up unlike the local one.

``run`` drives a run over notebooks of the ``corpus``, read into ``cells``; ``kernels`` drives
each kernel and snapshots its state with ``fingerprint`` (which runs inside the kernel);
``compare`` classifies each cell's differences, with ``reads`` telling a new difference from a
consequence and ``locate`` finding where two values part; ``known`` applies
known_differences.yaml; ``report`` writes the text report; ``text`` writes things in one line.
"""
