"""The CareWatch wire contract: one definition shared by the gateway and the ingest service.

Pure standard library, so that the gateway installs without any server dependency.
"""
