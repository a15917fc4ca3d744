# node-gyp build of the addon (npm install). The addon needs only the header,
# streamotter.h: STREAMOTTER_INCLUDE_DIR, else the repository's include/, else
# /usr/local/include (after `make install`). It does not link libstreamotter: it dlopen()s
# libstreamotter.so.0 at run time (see README.md).
{
  "targets": [
    {
      "target_name": "streamotter",
      "sources": ["src/addon.c"],
      "include_dirs": [
        "<!(node -p \"const fs = require('fs'), path = require('path'); process.env.STREAMOTTER_INCLUDE_DIR || [path.resolve('../../include'), '/usr/local/include', '/usr/include'].find((d) => fs.existsSync(path.join(d, 'streamotter.h'))) || 'include'\")"
      ],
      "libraries": ["-ldl", "-lpthread"],
      "cflags_c": ["-std=c11", "-Wall", "-Wextra", "-fvisibility=hidden"],
      "conditions": [
        ["OS!='linux'", {"type": "none"}]
      ]
    }
  ]
}
