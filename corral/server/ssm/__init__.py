"""The Systems Manager wire API: AWS tools (boto3, the AWS CLI, Terraform) talk to Corral.

`wire` is the protocol (shapes, errors, operations), `parameters` the Parameter
Store operations over the domain service, `endpoint` the route and its registry.
"""

from fastapi import FastAPI

from corral.server.ssm.endpoint import REGISTRY, handle_wire_error, router
from corral.server.ssm.wire import SsmError


def install(app: FastAPI) -> None:
    """Serve the wire API on `app` (the route and its error shape)."""
    app.include_router(router)
    app.add_exception_handler(SsmError, handle_wire_error)


__all__ = ["REGISTRY", "SsmError", "install"]
