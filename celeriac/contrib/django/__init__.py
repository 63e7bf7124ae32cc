"""Django integration: settings with a namespace, task discovery, on-commit sending."""

from celeriac.contrib.django.fixup import installed_app_names, setup_if_configured

__all__ = ["installed_app_names", "setup_if_configured"]
