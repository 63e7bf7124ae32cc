"""The notes app's tasks: found by app.autodiscover_tasks() through INSTALLED_APPS."""

from celeriac import shared_task

from .models import Note


@shared_task
def add_note(text: str) -> int:
    """Write a note through the ORM and return its id."""
    return Note.objects.create(text=text).id


@shared_task
def announce_note(note_id: int) -> str:
    """Read a note that a web request committed (sent with delay_on_commit)."""
    return Note.objects.get(id=note_id).text
