"""Label Studio: what its label configs, projects and exports mean to samloop.

- ``label_config``: the one parser of a label config, for serving and for training alike.
- ``projects``: the project-id rule (``"<id>"`` or ``"<id>.<created timestamp>"``).
- ``client``: the SDK client with retries and token refresh, and a timed HTTP session for downloads.
- ``annotations``: which annotation of a task to train on, and its regions as per-class masks.
- ``export``: a project's labeled tasks as a ``SegmentationDataset``.
- ``changes``: when a project's annotations last changed (for events samloop missed).

Imports ``training.data``.
"""
