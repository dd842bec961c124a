"""What the audit is asked: the rules its tests flag at (:class:`AuditThresholds`), the lung masks it may use, and
the error for inputs it cannot audit."""

from __future__ import annotations

from dataclasses import dataclass, fields

from unveil.errors import UnveilError, finite

#: where the lung masks of the occlusion and saliency tests come from
MASK_SOURCES = ("segment", "truth")


class AuditError(UnveilError, ValueError):
    """The audit cannot run on these inputs (the message says why)."""


@dataclass(frozen=True)
class AuditThresholds:
    """When a test raises a flag. Documented defaults; all configurable (``--threshold KEY=VALUE``)."""

    #: within one class, a probe telling two sources apart with this balanced accuracy (chance 0.5)
    source_probe: float = 0.75
    #: the model's ROC AUC with the lungs hidden (chance 0.5)
    occlusion_auc: float = 0.70
    #: flag when the Grad-CAM mass inside the lungs, divided by the lungs' share of the image, is below
    #: this (1 = no more saliency in the lungs than a uniform map would put there). Off by default:
    #: at the last convolution's resolution (1/8 to 1/32 of the image) Grad-CAM follows the lung area
    #: within about 15 % for biased and unbiased synthetic models alike (measured: 1.01 for `paper`,
    #: 0.88 for `clean`), so it is shown as evidence, and the occlusion test is the causal one.
    lung_saliency: float | None = None
    #: sources with fewer images than this within a class are not probed
    min_images: int = 10
    #: "does not transfer": AUC (or balanced accuracy) on an external set this much lower than on the model's
    #: own test split, with the interval of the drop above 0
    transfer_drop: float = 0.10
    #: "below chance": the external AUC's upper bound under this
    below_chance: float = 0.5
    #: within one class, a probe telling two values of a metadata factor apart with this balanced accuracy
    metadata_probe: float = 0.75
    #: the label predicted from all metadata factors together (own test split) with this AUC; None: informative
    metadata_only_auc: float | None = 0.80
    #: flag when the saliency maximum lies in the infected region on fewer COVID+ images than this share;
    #: off by default (no measured reference yet)
    infection_pointing: float | None = None
    #: flag a test set with at least this many images that duplicate the model's training images
    contamination: int = 1
    #: acquisition fingerprint (a data flag): the label predicted from the image files alone (width, height, format,
    #: bit depth, JPEG quality, DICOM Manufacturer ...; own test split) with this ROC AUC, the interval's lower bound
    #: above 0.5; None: informative
    fingerprint_auc: float | None = 0.80
    #: source discovery: k-means clusters of the encoder features sharing this much adjusted mutual information
    #: with the label (permutation p < 0.05), and the file properties telling them apart (next); None: informative.
    #: Measured: 0.01 for the synthetic `clean` AB model, 0.30 for `paper` (a COVID- only cluster of B's images
    #: beside a mixed one), 0.83 for a conv8 on COVID-ChestXRay COVID+ and Kermany COVID- in one CSV
    discovery_ami: float | None = 0.20
    #: source discovery: the balanced accuracy at which the file properties tell the COVID+-leaning clusters from the
    #: others (chance 0.5)
    discovery_acquisition: float = 0.75

    def __post_init__(self) -> None:
        """Every threshold given is a finite number (a NaN threshold would silently never flag)."""
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                number = finite(value, f"audit threshold {field.name}", AuditError)
                if field.type == "int" and number != int(number):
                    raise AuditError(f"audit threshold {field.name} must be a whole number; got {value!r}")
