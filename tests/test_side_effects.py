"""Importing sketchlab and building models changes no process-wide state (torch settings,
dynamo configuration, environment-driven switches)."""

import subprocess
import sys

CHECK = """
import os, sys, torch
os.environ["SKETCHLAB_FUSE"] = "0"   # an old process-wide switch: must be ignored now
before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads())
import sketchlab.nn.cells, sketchlab.nn.sampler, sketchlab.nn.cudagraph, sketchlab.eval.judge, sketchlab.models.sketch_a_net, sketchlab.api
from sketchlab.models.sketch_rnn import Config, SketchRNN
m = SketchRNN(Config(enc_rnn_size=8, dec_rnn_size=8, z_size=4, max_seq_len=10, dec_model="hyper"))
assert m.decoder.fusion.enabled and m.decoder.hyper_cell.fusion is m.decoder.fusion
off = SketchRNN(Config(enc_rnn_size=8, dec_rnn_size=8, z_size=4, max_seq_len=10, fuse_pointwise=False))
assert not off.decoder.fusion.enabled and not off.enc_fw.fusion.enabled
assert "torch._dynamo" not in sys.modules, "dynamo imported (and maybe configured) on import"
after = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads())
assert after == before, (before, after)
print("ok")
"""


def test_import_and_model_construction_leave_process_state_alone():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
