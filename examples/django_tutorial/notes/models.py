from django.db import models


class Note(models.Model):
    """A line of text, written by a web request or by a task on a worker."""

    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.text
