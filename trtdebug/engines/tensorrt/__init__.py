"""TensorRT 8.6 / 10.x / 11.x and TensorRT-RTX behind the engine protocol, one job per module:

- engine.py: TensorRTEngine: the Engine the CLI and workflows use; composes builder, marking, runner.
- context.py: TensorRTContext (what builder and runner take instead of the engine) and TensorRTOptions.
- builder.py: NetworkBuilder: parse, mark, typing, profile, config, tactics, serialize; BuildResult.
- marking.py: chunks of marked tensors, and bisecting out the tensors that break a build.
- network.py: network-level calls: parse ONNX, optimization profile, markable tensors, weak typing.
- runner.py: running engines: bindings, host/device buffers, debug listener, output allocator, TensorRTBuilt.
- host_types.py: TensorRT data types as host arrays (NumPy dtypes, BF16/FP8 decoding, feeds converted).
- layers.py: engine layers -> ONNX nodes (inspector JSON, build log, layer metadata).
- tactics.py: recording and banning tactics (IAlgorithmSelector, editable timing cache).
- calibration.py: INT8 calibrator from feeds or a calibration cache (<= 10.x).
- support.py: loading TensorRT lazily and feature detection.
- cuda_buffers.py: cuda-python device memory, streams and copies.
- selfcheck.py: `trtdebug selfcheck`: every path tried for real on this machine.

Importing this package imports no TensorRT and no cuda-python: they are imported lazily.
"""
