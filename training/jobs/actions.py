"""Label Studio's webhook actions, as training sees them: which ones train, which force a run.

The backend validates events against ``KNOWN_ACTIONS``; the scheduler acts on ``TRAINING_ACTIONS``.
``ADMIN_TRAIN`` is the admin console's "train now": a trigger Label Studio never sends (so the webhook
refuses it), forced like the Start Training button.
"""

from __future__ import annotations

__all__ = ["ADMIN_TRAIN", "FORCED_ACTIONS", "KNOWN_ACTIONS", "OTHER_LS_ACTIONS", "TRAINING_ACTIONS"]

# Actions that may change what the adapter should learn; START_TRAINING is the "Start Training" button.
TRAINING_ACTIONS = frozenset(
    {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED", "START_TRAINING"}
)
ADMIN_TRAIN = "ADMIN_TRAIN"
# Train even when the project's auto-training is off.
FORCED_ACTIONS = frozenset({"START_TRAINING", ADMIN_TRAIN})
# Every other action Label Studio (community and enterprise) emits: acknowledged and ignored.
OTHER_LS_ACTIONS = frozenset({
    "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED",
    "TASKS_CREATED", "TASKS_DELETED",
    "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED",
    "REVIEW_CREATED", "REVIEW_UPDATED", "REVIEWS_DELETED",
})
KNOWN_ACTIONS = TRAINING_ACTIONS | OTHER_LS_ACTIONS
