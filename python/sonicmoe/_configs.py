"""Canonical MoE layer shapes (a copy of the project's bench_configs.json).

Canonical MoE layer shapes. T tokens, H hidden (d), I expert intermediate (n), E experts, K experts per token. Activation SwiGLU, bf16, no bias. sonicmoe_h100 = [fwd, bwd] TFLOPS read off the SonicMoE paper's figures (H100), None where not published.
"""

CONFIGS = {
    "1.4b-n256": {"T": 40960, "H": 768, "I": 256, "E": 128, "K": 8, "sonicmoe_h100": [339, 366]},
    "1.4b-n1024": {"T": 40960, "H": 768, "I": 1024, "E": 32, "K": 2, "sonicmoe_h100": [405, 435]},
    "7b-n256": {"T": 24576, "H": 1536, "I": 256, "E": 128, "K": 8, "sonicmoe_h100": [364, 405]},
    "7b-n512": {"T": 24576, "H": 1536, "I": 512, "E": 64, "K": 4, "sonicmoe_h100": [435, 439]},
    "7b-n1024": {"T": 24576, "H": 1536, "I": 1024, "E": 32, "K": 2, "sonicmoe_h100": [467, 467]},
    "30b-n256": {"T": 32768, "H": 4096, "I": 256, "E": 256, "K": 16, "sonicmoe_h100": [429, 461]},
    "30b-n1024": {"T": 32768, "H": 4096, "I": 1024, "E": 64, "K": 4, "sonicmoe_h100": [553, 555]},
    "120b-n512": {"T": 32768, "H": 4096, "I": 512, "E": 256, "K": 16, "sonicmoe_h100": [519, 527]},
    "120b-n2048": {"T": 32768, "H": 4096, "I": 2048, "E": 64, "K": 4, "sonicmoe_h100": [596, 587]},
    "olmoe-7b": {"T": 32768, "H": 2048, "I": 1024, "E": 64, "K": 8, "sonicmoe_h100": None},
    "gptoss-20b": {"T": 32768, "H": 2880, "I": 2880, "E": 32, "K": 4, "sonicmoe_h100": None},
    "kimi-48b": {"T": 32768, "H": 2304, "I": 1024, "E": 256, "K": 8, "sonicmoe_h100": None},
    "qwen3next-80b": {"T": 32768, "H": 2048, "I": 512, "E": 512, "K": 10, "sonicmoe_h100": None},
    "qwen3-235b": {"T": 32768, "H": 4096, "I": 1536, "E": 128, "K": 8, "sonicmoe_h100": None},
    "dsv3-685b": {"T": 32768, "H": 7168, "I": 2048, "E": 256, "K": 8, "sonicmoe_h100": [535, 480]},
}

TINY = {"T": 256, "H": 128, "I": 64, "E": 8, "K": 2}
