"""The REST/JSON API and the portal's files, served over HTTP(S) in the gateway's event
loop (FABRIC_HTTP_LISTEN)."""
