# Import the app whenever Django starts, so that @shared_task uses it.
from .celeriac import app as celeriac_app

__all__ = ("celeriac_app",)
