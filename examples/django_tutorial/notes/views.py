"""Saving a note and telling a worker about it, only once the row is committed."""

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from .models import Note
from .tasks import announce_note


def create_note_and_notify(text: str) -> Note:
    """Save a note and queue a task about it when the transaction commits.

    ``delay()`` inside the block could reach a worker before the commit, and the worker would
    not find the row; ``delay_on_commit()`` sends nothing until the commit, and nothing at
    all if the block rolls back.
    """
    with transaction.atomic():
        note = Note.objects.create(text=text)
        announce_note.delay_on_commit(note.id)
    return note


def create_note(request: HttpRequest) -> JsonResponse:
    """POST text=... creates a note; the worker hears about it after the commit."""
    if request.method != "POST":
        return JsonResponse({"error": "POST text=..."}, status=405)
    note = create_note_and_notify(request.POST.get("text", ""))
    return JsonResponse({"id": note.id}, status=201)
