"""Generated from the `.proto` files in this folder by `protos/ehds/federation/codegen.py`:
do not edit.

The `*_pb2.py` / `*_pb2_grpc.py` modules are protoc's output, the `.pyi` files mypy-protobuf's.
"""
