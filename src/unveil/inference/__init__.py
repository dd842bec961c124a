"""Using trained models on new images: prediction with evidence and warnings, and export (the classifier, or
the whole chain for ONNX Runtime)."""

from unveil.inference.export import ExportError, export_model
from unveil.inference.ood import refit_ood_reference
from unveil.inference.pipeline_export import export_pipeline
from unveil.inference.predict import InputCheck, LungCheck, PredictionError, Predictor, predict_files
from unveil.training.ood import OodReference, OodReferenceOutdated, fit_ood_reference

__all__ = ["ExportError", "InputCheck", "LungCheck", "OodReference", "OodReferenceOutdated", "PredictionError",
           "Predictor", "export_model", "export_pipeline", "fit_ood_reference", "predict_files", "refit_ood_reference"]
