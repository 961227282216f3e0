"""TensorRT engine building, timing and accuracy comparison (not implemented yet: see the issue
tracker). TensorRT itself is imported lazily so that onnxpass works where it is not installed."""
