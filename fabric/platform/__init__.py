"""The platform (control plane): connections with their secrets, refresh, departure.

`fabric.api.platform_service` is its gRPC face; `fabric.platform.plane.Platform` bundles
what the servicers need; the runtime learns about changes through
`fabric.platform.departure.ChangeListener`.
"""
