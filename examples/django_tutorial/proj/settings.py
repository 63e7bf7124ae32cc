"""Settings for the celeriac tutorial project: the minimum Django needs, and the broker."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# A development key: never use it in production.
SECRET_KEY = "django-insecure-celeriac-tutorial"
DEBUG = True
ALLOWED_HOSTS: list[str] = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "notes",
]

ROOT_URLCONF = "proj.urls"
WSGI_APPLICATION = "proj.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# celeriac: the embedded SQLite broker (a file in the directory the worker runs in) needs
# nothing installed. In production, point it at Redis:
#   CELERIAC_BROKER_URL = "redis://localhost:6379"
CELERIAC_BROKER_URL = os.environ.get("CELERIAC_BROKER_URL", "sqlite:///celeriac.sqlite3")
# No CELERIAC_RESULT_BACKEND: results are kept in the broker's store.
