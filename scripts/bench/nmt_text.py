"""Text files read the way nmt reads them, shared by the benchmark scripts of this directory."""


def read_lines(path):
    """nmt's `read_lines`: split on \\n, strip one \\r per line, a final newline optional, UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return []
    if data.endswith(b"\n"):
        data = data[:-1]
    return [(raw[:-1] if raw.endswith(b"\r") else raw).decode("utf-8") for raw in data.split(b"\n")]
