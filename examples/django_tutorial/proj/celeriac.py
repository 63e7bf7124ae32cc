import os

from celeriac import Celeriac

# Set the default Django settings module for the 'celeriac' program.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celeriac("proj")

# Read every setting from Django's settings; namespace="CELERIAC" means a setting is
# spelt with a CELERIAC_ prefix there: CELERIAC_BROKER_URL sets broker_url.
app.config_from_object("django.conf:settings", namespace="CELERIAC")

# Load tasks.py from every app in INSTALLED_APPS (when the worker starts, not now).
app.autodiscover_tasks()


@app.task(bind=True)
def debug_task(self):
    print(f"Request: {self.request!r}")
