"""Tag images with any words: the inference API of ``adds``.

Three lines of Python::

    from adds.tagger import Tagger
    tagger = Tagger.clip_baseline("ViT-B-32-quickgelu", "openai")      # or Tagger.from_checkpoint("run/best")
    tagger(["cat.jpg", "beach.png"], labels=["cat", "dog", "sea"])      # [[{"label": "cat", "score": 0.93}], ...]

Two kinds of scorer sit behind :class:`Tagger`:

* a trained ADDS head (:meth:`Tagger.from_checkpoint`): frozen towers, Pyramid-Forwarding, DM-decoder (Eq. 5) and
  the shared classifier; the score of a label is ``sigmoid(logit)``, thresholded at 0.5 in the paper (Appendix,
  Figure 5) or at the checkpoint's calibrated per-label thresholds (``thresholds.tsv``).
* the training-free CLIP baseline (:meth:`Tagger.clip_baseline`, :class:`CLIPBaseline`): no head at all, only the
  cosine similarity of CLIP's image embedding with the prompt-ensembled label embedding, each label's best over
  the whole view and its four quadrants (``CLIPBaselineConfig(pooling="view")``: the one view).

Scores
------
Every score is an independent sigmoid in ``[0, 1]``: scores do **not** sum to 1 over the labels, several labels can
score high at once (multi-label), and none may. With an ADDS head of two or more DM-decoder layers a label's score
also depends on the *whole label list* (the image tokens of layer 2 have attended to every label's layer-1 output,
see ``docs/architecture.md``), so tagging with ``["dog", "cat"]`` and with ``["dog", "cat", "car"]`` can give "dog"
slightly different scores. A 1-layer DM-decoder, the ML-Decoder baseline and the CLIP baseline score each label on
its own. The CLIP baseline's score is explained in :mod:`adds.tagger.baseline`; it is **not calibrated**.

Images and the input plan
-------------------------
Images may be paths, PIL images or tensors (``(3, H, W)`` or ``(B, 3, H, W)``, float in ``[0, 1]`` or uint8); files
and PIL images go through :func:`adds.data.images.load_image` (EXIF orientation, CMYK, 16-bit, palette, alpha).
Every image is squashed (resized without keeping the aspect ratio, as in training) to the head's input size and
run through the head's Pyramid-Forwarding levels: the plan the head was trained with (:mod:`adds.tagger.plan`:
``training.json``'s ``input_size`` and the checkpoint's levels), the same plan ``adds eval`` uses. The CLIP
baseline squashes to ``2S`` and uses levels 0 and 1 (one ``S x S`` view with ``pooling="view"``).

Vocabulary and thresholds
-------------------------
Labels default to the checkpoint's vocabulary (an optional ``labels.txt`` next to its ``config.json``), else to a
built-in everyday vocabulary of 4,585 tags from Recognize Anything (Apache-2.0, see
``resources/NOTICE-recognize-anything.md``). Label embeddings are computed once per vocabulary and reused
(:meth:`Tagger.set_labels`). Label rules (:mod:`adds.tagger.vocabulary`) are the same in the CLI, the web demo and
this API: duplicates and blanks are refused.

A label is kept when ``score >= threshold`` for that label. Thresholds are looked up by label name in a
:class:`ThresholdSet`: the label's own threshold if the set has one, else the set's global threshold. A tagger
starts with its default vocabulary's per-label thresholds (the built-in list's per-tag thresholds, or a
checkpoint's ``thresholds.tsv``) and the global :attr:`TaggerConfig.threshold` (0.5, the paper's). A per-call
``threshold=`` replaces them for that call: a float is used for every label; a dict or a file of per-label
thresholds (``label<TAB>threshold`` lines, or a JSON object) is combined with the global threshold, and must name
only labels being tagged. ``top_k`` then keeps at most the ``k`` best of the labels that passed.

Modules: :mod:`~adds.tagger.core` (the tagger), :mod:`~adds.tagger.plan` (input plan), :mod:`~adds.tagger.baseline`
(CLIP baseline), :mod:`~adds.tagger.thresholds`, :mod:`~adds.tagger.vocabulary`, :mod:`~adds.tagger.files`
(finding images), :mod:`~adds.tagger.decode` (files to squashed pixels, ``fast_decode``),
:mod:`~adds.tagger.precision` (``--precision fp32|bf16|fp16``), :mod:`~adds.tagger.output` (result files, resume),
:mod:`~adds.tagger.shards` (torchrun sharding) and :mod:`~adds.tagger.xmp` (XMP sidecars; needs the ``[xmp]``
extra).
"""

from adds.tagger.baseline import CLIPBaseline, CLIPBaselineConfig
from adds.tagger.core import LABELS_NAME, FileTags, ImageInput, PreparedImage, Tagger, TaggerConfig
from adds.tagger.files import find_images, read_path_list
from adds.tagger.plan import TRAINING_NAME, InputPlan, input_plan, trained_input_size
from adds.tagger.thresholds import (
    LEGACY_THRESHOLDS_NAME,
    THRESHOLDS_NAME,
    ThresholdSet,
    ThresholdSpec,
    read_thresholds,
)
from adds.tagger.vocabulary import (
    builtin_thresholds,
    builtin_vocabulary,
    labels_from_values,
    read_labels,
    split_label_text,
)

__all__ = [
    "CLIPBaseline",
    "CLIPBaselineConfig",
    "FileTags",
    "ImageInput",
    "InputPlan",
    "LABELS_NAME",
    "LEGACY_THRESHOLDS_NAME",
    "PreparedImage",
    "THRESHOLDS_NAME",
    "TRAINING_NAME",
    "Tagger",
    "TaggerConfig",
    "ThresholdSet",
    "ThresholdSpec",
    "builtin_thresholds",
    "builtin_vocabulary",
    "find_images",
    "input_plan",
    "labels_from_values",
    "read_labels",
    "read_path_list",
    "read_thresholds",
    "split_label_text",
    "trained_input_size",
]
