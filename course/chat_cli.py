"""A terminal chat with any course model: course machinery around `helpers.chat.ChatSession`.

    # the course model; or hf, gptq, awq, a path, a hub id
    python -m course.chat_cli gguf
    python -m course.chat_cli gguf --load chat.json --no-stream

Commands while chatting: /reset, /save PATH, /load PATH, /help, /exit (or Ctrl-D). Lines can come
from a pipe as well as from a person.
"""

from __future__ import annotations

import argparse
import sys

from helpers.chat import ChatSession
from helpers.errors import CourseError
from helpers.generation import backend_of

from .models import resolve_model

HELP = (
    "commands: /reset (forget the conversation), /save PATH, /load PATH, /help, /exit (or Ctrl-D)\n"
    "Ctrl-C while the model writes stops the reply."
)


def main(argv: list[str] | None = None) -> int:
    """python -m course.chat_cli MODEL: a terminal chat; reads lines from stdin (a pipe works
    too)."""
    parser = argparse.ArgumentParser(
        prog="python -m course.chat_cli",
        description=(
            "Chat with a local model in the terminal. "
            "Commands: /reset, /save PATH, /load PATH, /help, /exit."
        ),
    )
    parser.add_argument(
        "model",
        help="a .gguf file, a model folder, a hub id (owner/name), or a course model: "
        "gguf, hf, gptq, awq (course = gguf)",
    )
    parser.add_argument(
        "--system",
        default="You are a helpful assistant. Answer briefly.",
        help="the system prompt (default: %(default)r; '' for none)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="longest reply, in tokens (default 256)"
    )
    parser.add_argument(
        "--no-stream", action="store_true", help="print each reply when it is complete"
    )
    parser.add_argument(
        "--template",
        choices=["auto", "chat", "few-shot", "completion"],
        default="auto",
        help="how the conversation becomes a prompt (default auto: the model's own chat template, "
        "else a few-shot transcript for base models)",
    )
    parser.add_argument(
        "--n-ctx", type=int, default=4096, help="context window in tokens (default 4096)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--load", metavar="PATH", help="continue a saved history")
    parser.add_argument(
        "--gguf-file",
        metavar="PATTERN",
        help="with a hub id: which .gguf file, e.g. '*Q4_K_M.gguf'",
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default $QLLM_THREADS or all cores)"
    )
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(
                errors="replace"
            )  # never die printing a character the terminal lacks
    from helpers.loading import load_model

    try:
        source = resolve_model(args.model, args.gguf_file)
        print(f"loading {source} ...", flush=True)
        lm = load_model(source, n_ctx=args.n_ctx, n_threads=args.threads)
        session = ChatSession(
            lm,
            system=args.system or None,
            template=args.template,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            context_window=min(args.n_ctx, lm.context_length),
        )
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return _chat_loop(session, args)
    finally:
        backend_of(lm).close()  # free it now, not in a destructor at interpreter exit


def _chat_loop(session: ChatSession, args) -> int:
    interactive = sys.stdin.isatty()
    lm = session.lm
    print(f"{lm.format} model via {lm.backend}: {lm.path.name}")
    print(session.template.describe())
    print(
        f"window {session.context_window} tokens, replies up to {session.max_new_tokens} tokens, "
        f"streaming {'off' if args.no_stream else 'on'}"
    )
    print(HELP, flush=True)
    if args.load:
        _try(lambda: print(session.load(args.load)))
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print()
            break
        if not line:  # end of input: Ctrl-D, or the end of a pipe
            if interactive:
                print()
            break
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if not interactive:
            print(f"you> {text}")  # a piped conversation reads like a transcript
        if text.startswith("/"):
            if not _command(session, text):
                break
            continue
        print("model> ", end="", flush=True)
        try:
            session.ask(text, stream=not args.no_stream)
        except KeyboardInterrupt:
            print("\n[stopped]")
        except CourseError as err:
            print(f"\n[{err}]")
    print("bye", flush=True)
    return 0


def _try(action) -> None:
    try:
        action()
    except CourseError as err:
        print(f"[{err}]")


def _command(session: ChatSession, text: str) -> bool:
    """Run a /command; False means exit."""
    name, _, arg = text.partition(" ")
    name, arg = name.lower(), arg.strip()
    if name in ("/exit", "/quit", "/bye"):
        return False
    if name == "/reset":
        session.reset()
        print("[history cleared; the system prompt stays]")
    elif name in ("/save", "/load"):
        if not arg:
            print(f"[{name} needs a file name: {name} chat.json]")
        elif name == "/save":
            _try(lambda: print(f"[saved {len(session.turns())} messages to {session.save(arg)}]"))
        else:
            _try(lambda: print(f"[{session.load(arg)}]"))
    elif name == "/help":
        print(HELP)
    else:
        print(f"[unknown command {name}] {HELP}")
    return True


if __name__ == "__main__":
    sys.exit(main())
