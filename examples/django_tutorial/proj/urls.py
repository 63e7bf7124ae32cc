"""URLs of the tutorial project: one form-less endpoint that creates a note."""

from django.urls import path
from notes.views import create_note

urlpatterns = [
    path("notes/", create_note, name="create-note"),
]
