"""Facts every stage shares: the mask value that marks unlabelled pixels and the input
normalisation. One home, so data, losses, metrics, galleries and exports cannot drift apart.
No imports: any module (and the orchestrator) can import this without loading torch.
"""

IGNORE_INDEX = 255  # mask value of unlabelled pixels: skipped by losses, metrics and CAM targets
# ImageNet statistics: the pretrained encoders were trained on inputs normalised with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Reported per epoch by every trial with a teacher: items the teacher ran on, items its output
# cache served, items it lacked, bytes written to it (trainables.teacher_step)
TEACHER_COUNTS = ("teacher_forwards", "teacher_cache_hits", "teacher_cache_misses", "teacher_cache_bytes")
