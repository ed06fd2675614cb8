"""`patch`: adversarial patches, trained on one part of the data and scored on images they never saw.

Classifiers: a universal adversarial patch (Brown, Mané, Roy, Abadi & Gilmer 2017, "Adversarial
Patch", arXiv:1712.09665): one patch per scale, pasted at a random place, rotation and size on
every training image and ascended with Adam, to turn any image into one target class
(targeted) or away from its own class (untargeted). Detectors: a patch that hides the objects
it sits on (Thys, Van Ranst & Goedemé 2019, "Fooling automated surveillance cameras:
adversarial patches to attack person detection", CVPR Workshops): pasted on every object, it
pushes down the scores of the detector's candidates for that object. Segmenters: a patch pasted
anywhere that changes the predicted class of the pixels outside it.

Departures from the papers, all deliberate:
- square patches, not Brown's circles, so that a scale is exactly the share of area covered;
  rotated up to ±ROTATION degrees, and resized by SIDE_JITTER while training;
- `scale` is the share of the image's area for classifiers and segmenters, and of each object's
  box area for detectors: a patch as big as a small object hides it by occlusion alone;
- YOLOv8 has no objectness score (Thys et al. minimised YOLOv2's): the highest class score
  stands in for it, through its logit (a saturated sigmoid has no gradient), on every candidate
  whose box overlaps the object (MATCH_IOU), not on the maximum alone, because NMS would keep
  the runner-up;
- the default target is chosen by the untargeted patch (`choose_target`);
- a random patch of the same size is scored beside each trained one, so that what occlusion
  does is not read as an attack.

Where to read: probe.py (the Probe: parameters, the run, findings, figures), goals/ (what a
patch does for each task, and how held-out images score it), training.py (the split and the
Adam loop), geometry.py (placements and the batched paste), details.py (the typed rows of
results.json and the report's view), figures.py.
"""

from auditor.probes.patch.probe import PatchProbe

__all__ = ["PatchProbe"]
