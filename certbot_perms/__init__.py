"""certbot_perms: a Certbot installer (``-i perms``) and a hook command
(``certbot-perms``) that give a lineage's private key the owner, group and mode
its daemons need, keep them across every renewal, and let that owner and group
reach ``live/<name>/privkey.pem`` without opening ``/etc/letsencrypt`` to anyone
else.

Installer::

    certbot run -a standalone -i perms -d mail.example.org \\
        --perms-key-group ssl-cert --perms-key-mode 0640

or in ``/etc/letsencrypt/cli.ini``::

    perms-key-group = ssl-cert
    perms-key-mode = 0640

Hook, with any other installer::

    certbot certonly ... --deploy-hook 'certbot-perms apply --key-group ssl-cert'

Audit::

    certbot-perms check [--fix] [--json]

Layout: :mod:`.spec`, :mod:`.acl`, :mod:`.lineage`, :mod:`.records` and
:mod:`.audit` import no certbot; :mod:`.installer` is the certbot-facing
adapter; :mod:`.cli` is the command line.
"""
