"""Checked by mypy in tests/test_typing.py: the lines marked E must be type errors."""

from celeriac import AsyncResult, Celeriac, Task, shared_task

app = Celeriac("typing", broker="memory://typing")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=2)
def bound(self: Task[[str], str], text: str) -> str:
    return text.upper()


@shared_task
def shout(text: str) -> str:
    return text.upper()


def good() -> None:
    result: AsyncResult[int] = add.delay(1, 2)
    total: int = result.get(timeout=1)
    upper: str = bound.delay("x").get()
    loud: str = shout.delay("x").get()
    direct: int = add(1, 2)
    print(total, upper, loud, direct)


def bad() -> None:
    add.delay(1, "x")  # E: a str where an int goes
    bound.delay(1)  # E: an int where a str goes
    text: str = add.delay(1, 2).get()  # E: the result is an int
    add(1)  # E: a missing argument
    print(text)
