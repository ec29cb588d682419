"""The project's research: plans run to convergence, their analysis, the targets and the results document.

Not installed with fedzip. Stages read one way:
runs on disk (:mod:`.runs`) → analysis, numbers only (:mod:`.analysis`) →
targets, every rule and constant once (:mod:`.targets`) → rendering,
Markdown and figures (:mod:`.render`, :mod:`.figures`) → the documents
(:mod:`.document`; :mod:`.paper` for the 10-round one). Run it with
``python -m research`` (``make reproduce``).
"""
