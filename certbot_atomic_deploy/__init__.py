"""certbot_atomic_deploy: a Certbot deploy hook that validates key and
certificate and publishes them where each daemon wants them, atomically.

Imports no certbot: it runs on every renewal.
"""
