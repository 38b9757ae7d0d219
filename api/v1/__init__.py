"""Package ``log.v1``: ``log.proto`` and the code ``make proto`` generates from it.

Import the generated modules from here::

    from raftlog.api.v1 import log_pb2, log_pb2_grpc
"""
