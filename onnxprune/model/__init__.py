"""The model room: load, save and normalize ONNX models; tensor, shape and graph-edit helpers; the
ONNX Runtime session every stage uses; a read-only `ModelView` of a normalized model."""
