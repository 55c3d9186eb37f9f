"""API: the gRPC servicers, the server and its status mapping."""
