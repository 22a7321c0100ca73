"""A process killed mid-reply: the partial text survives and is marked interrupted."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from app.chats import ChatStore, MessageState

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys
from app.chats import ChatStore, MessageState, Role

store = ChatStore(sys.argv[1])
conv = store.create_conversation(title="Story")
store.add_message(conv.id, Role.USER, "Tell me a story")
reply = store.add_message(conv.id, Role.ASSISTANT, state=MessageState.STREAMING)
for part in ("Once upon ", "a time, ", "a kettle ", "sang."):
    store.append_text(reply.id, part)
print(f"streaming {reply.id}", flush=True)
sys.stdin.read()  # hold the store open, mid-reply, until killed
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_stream_keeps_partial_text(db_path: Path) -> None:
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db_path)], cwd=REPO, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # blocks until the child has appended (or died)
        assert line.startswith("streaming "), f"child failed before streaming: {line!r}"
        reply_id = int(line.split()[1])
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()

    # the text is only in the write-ahead log: nothing closed or checkpointed the file
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 0

    with ChatStore(db_path, recover=False) as store:  # first look: exactly as the kill left it
        assert store.message(reply_id).state is MessageState.STREAMING
    with ChatStore(db_path) as store:
        reply = store.message(reply_id)
        assert reply.content == "Once upon a time, a kettle sang."
        assert reply.state is MessageState.INTERRUPTED
        assert [m.content for m in store.messages(reply.conversation_id)] == [
            "Tell me a story", "Once upon a time, a kettle sang."]
        assert store.recover() == []  # done once, on open
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
    db.close()
