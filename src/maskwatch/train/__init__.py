"""Training, evaluation and model export for maskwatch (the only part of maskwatch that uses torch).

Modules: `data` (folder datasets, face crops, `prepare`), `synth` (synthetic masks), `nets` (the three seed
networks and the production two-head MobileNetV2), `loop` (training), `export` (ONNX + model card),
`report` (plots), `evaluate` (crops / faces / scenes), `cli` (the `train`, `prepare`, `evaluate` commands).
torch is imported only inside the functions that need it.
"""
