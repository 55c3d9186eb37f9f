"""Generated from proto/fabric/v1 by scripts/gen_proto.py; do not edit."""
