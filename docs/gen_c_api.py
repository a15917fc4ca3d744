import re
from pathlib import Path
ROOT=Path(__file__).resolve().parent.parent  # the checkout this script is in
src=open(ROOT/'include/streamotter.h').read()
out=[]
for m in re.finditer(r'(/\*\*(?:(?!\*/).)*\*/)\s*\n((?:SOT_API[^;]*;\s*)+)', src, re.S):
    doc=m.group(1)
    doc=re.sub(r'^/\*\*\s?|\s*\*/$','',doc)
    doc='\n'.join(l.strip().lstrip('*').strip() for l in doc.splitlines())
    for decl in re.findall(r'SOT_API[^;]*;', m.group(2)):
        name=re.search(r'(sot_[a-z0-9_]+)\s*\(', decl).group(1)
        out.append((name,' '.join(decl.split()).replace('SOT_API ',''),doc))
sections=[('Version and errors',['sot_version','sot_version_number','sot_err_name','sot_strerror','sot_err_count','sot_err_code_at','sot_last_error','sot_last_status']),
('Configuration',['sot_conf_new','sot_conf_set','sot_conf_get','sot_conf_destroy']),
('Engine',['sot_engine_new','sot_engine_start','sot_engine_stop','sot_engine_port','sot_engine_bootstrap_servers','sot_engine_destroy','sot_engine_fd','sot_engine_poll','sot_runtime_info']),
('Gateway connections',['sot_engine_set_server_callbacks','sot_conn_send','sot_conn_close','sot_engine_publish']),
('Authentication, audit and encryption keys',['sot_engine_set_auth_callback','sot_auth_allow','sot_auth_deny','sot_engine_set_audit_callback','sot_engine_set_key_provider']),
('WebSocket client',['sot_client_new','sot_client_start','sot_client_send','sot_client_publish','sot_client_subscribe','sot_client_unsubscribe','sot_client_get_health','sot_client_close','sot_client_destroy']),
('Kafka consumer',['sot_consumer_new','sot_consumer_subscribe','sot_consumer_assign','sot_consumer_seek','sot_consumer_seek_time','sot_consumer_commit','sot_consumer_destroy'])]
byname={n:(d,doc) for n,d,doc in out}
lines=['# The C API','','`include/streamotter.h` is the specification; this page lists every function it declares, grouped, with the header\'s own text (regenerate with `python3 docs/gen_c_api.py`). Link with `pkg-config --cflags --libs streamotter`.','',
'Rules that hold for every function (the header\'s opening comment says them in full):','',
'- Status codes: `0` (`SOT_OK`) success, negative `SOT_ERR_*` errors (`SOT_ERR_INVALID_ARG` -1, `SOT_ERR_CONFIG` -2, `SOT_ERR_STATE` -3, `SOT_ERR_KAFKA` -4, `SOT_ERR_IO` -5, `SOT_ERR_NOMEM` -6, `SOT_ERR_INTERNAL` -7, `SOT_ERR_NOT_FOUND` -8, `SOT_ERR_IN_CALLBACK` -9, `SOT_ERR_BAD_HANDLE` -10); `sot_last_error()` has the message of the last failing call on the thread. Codes are never renumbered.',
'- Ownership: strings and buffers passed in are copied; returned `const char *` belong to the library; pointers given to callbacks are valid during the call only; `_destroy` accepts NULL and ignores a handle destroyed already.',
'- Threading: one engine = one loop thread. Callbacks run on it (`callbacks=thread`) or on the host\'s thread inside `sot_engine_poll` (`callbacks=poll`). Sending calls are safe from any thread; stop/destroy not from inside the same engine\'s callbacks (destroy is deferred there).',
'- Callbacks: a call that fails never runs its callback; one that succeeds runs it exactly once (message callbacks: until the subscription ends). After `_destroy` returns, no callback of that object runs.','']
seen=set()
for title,names in sections:
    lines += ['## '+title, '']
    for n in names:
        d,doc=byname[n]; seen.add(n)
        lines += ['### `'+n+'`','','```c',d,'```','',doc.strip(),'']
missing=set(byname)-seen
assert not missing, missing
lines += ['## Structures','','`sot_header`, `sot_server_callbacks`, `sot_client_callbacks`, `sot_message`, `sot_client_health` and `sot_record` are declared in the header with their fields documented. Each public struct that may grow starts with `size_t size`: the caller sets it to `sizeof(struct)` (callbacks, health) or the library does (message, record), and fields are only ever appended.']
open(ROOT/'docs/c-api.md','w').write('\n'.join(lines)+'\n')
print(len(byname), "functions")
