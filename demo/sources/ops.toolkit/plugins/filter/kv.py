"""``ops.toolkit.kv``: a mapping as sorted ``key = value`` lines."""


def kv(mapping):
    return "".join(f"{key} = {mapping[key]}\n" for key in sorted(mapping))


class FilterModule:
    def filters(self):
        return {"kv": kv}
