"""Seeing a mirror: a read-only web view of the state db (``serve``) and its export as one
self-contained HTML file (``report --html``). It only reads: the state through
:mod:`desimirror.state.treeview` and :func:`desimirror.pipeline.status.mirror_status`."""
