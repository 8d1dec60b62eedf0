"""The toy world v2 (issue 9): a CPU-sized lab in which each ADDS paper claim can come out either way.

* :mod:`adds.toyworld.world` -- scenes of coloured, textured shapes; 144 concepts + 16 attribute words; the seen
  labels and the two unseen sets U_comb / U_word; partial captions.
* :mod:`adds.toyworld.toyclip` -- the committed tiny CLIPs (``adds-toyclip2``), trained on multi-object scenes
  with partial captions, loaded through :mod:`adds.towers`.
* :mod:`adds.toyworld.encoders` -- the text encoders of Tables 6/9.
* :mod:`adds.toyworld.lab` -- the runner: heads on cached tokens, every table's rows, worker processes.
* :mod:`adds.toyworld.report` -- gates G1-G3, computed verdicts, tables, the ``--json`` record.
"""
