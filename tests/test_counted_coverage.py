"""The ``counted`` meter counts every model family, or says by name what it could not count.

Published figures come from torchvision's weight metadata (``meta["_ops"]``, giga-MACs); the
models are built with ``weights=None`` on the ``meta`` device, so nothing is downloaded and no
arithmetic runs: counting needs shapes only.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json

import pytest
import torch
from torch import nn

from pytest_energy.meters.counted import count, uncounted_warning

quantization_warnings = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"
)

PUBLISHED_MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "alexnet",
    "googlenet",
    "mnasnet0_5",
    "densenet121",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
    "maxvit_t",
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", PUBLISHED_MODELS)
def test_torchvision_published_giga_macs_within_one_percent(name):
    torchvision = pytest.importorskip("torchvision")
    weights = next(iter(torchvision.models.get_model_weights(name)))
    side = weights.transforms().crop_size[0]
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None).eval()
        image = torch.randn(1, 3, side, side)
    with torch.no_grad():
        reading = count(lambda: model(image))
    assert reading.flops / 2 / 1e9 == pytest.approx(weights.meta["_ops"], rel=0.01)
    assert reading.details["uncounted_operators"] == {}


def module_samples(module_info, training):
    """The catalogue's sample inputs for one module (none where it cannot make them here)."""
    torch.manual_seed(0)
    try:
        return module_info.module_inputs_func(
            module_info, device="cpu", dtype=torch.float32, requires_grad=True, training=training
        )
    except Exception:
        return []


def module_step(module_info, training, index):
    """A fresh module and sample: a function running its forward and backward."""
    sample = module_samples(module_info, training)[index]
    constructor, forward = sample.constructor_input, sample.forward_input
    module = module_info.module_cls(*constructor.args, **constructor.kwargs).train(training)

    def run():
        outputs = torch.utils._pytree.tree_leaves(module(*forward.args, **forward.kwargs))
        differentiable = [t for t in outputs if isinstance(t, torch.Tensor) and t.requires_grad]
        if differentiable:
            sum(t.sum() for t in differentiable).backward()

    return run


def runnable_module_samples():
    """(label, step maker) for up to three samples per module and mode that run uncounted."""
    from torch.testing._internal.common_modules import module_db

    for module_info, training in itertools.product(module_db, (True, False)):
        for index in range(min(len(module_samples(module_info, training)), 3)):
            make_step = functools.partial(module_step, module_info, training, index)
            try:
                make_step()()
            except Exception:
                continue  # the sample fails without counting too
            yield f"{module_info.name} (training={training}, sample {index})", make_step


def test_every_module_in_torchs_module_database_counts_forward_and_backward():
    """torch's own catalogue of nn modules and their sample inputs (torch.testing), in training
    and in eval: wherever a sample runs without counting, it runs counted, with every operator
    of its forward and backward counted or memory-only, none named as uncounted."""
    counted_samples, problems = 0, []
    for label, make_step in runnable_module_samples():
        try:
            reading = count(make_step())
        except Exception as error:
            problems.append(f"{label}: {type(error).__name__}: {error}")
            continue
        counted_samples += 1
        if reading.details["uncounted_operators"]:
            problems.append(f"{label}: {reading.details['uncounted_operators']}")
    assert problems == []
    assert counted_samples > 500


# --- attention and recurrent layers against the hand formula ----------------------------------

EMBED, HEADS, FEED_FORWARD, BATCH, TOKENS = 16, 2, 32, 2, 5
ATTENTION_MACS = 4 * BATCH * TOKENS * EMBED * EMBED + 2 * BATCH * TOKENS * TOKENS * EMBED
"""q, k, v and output projections, then Q Kᵀ and the weighted sum of values."""


def macs(reading):
    return reading.flops // 2


def test_multi_head_attention_fast_path_and_training_path_match_the_hand_formula():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
    x = torch.randn(BATCH, TOKENS, EMBED)
    training = count(lambda: attention(x, x, x))
    flash = count(lambda: attention(x, x, x, need_weights=False))
    attention.eval()
    with torch.no_grad():
        fused = count(lambda: attention(x, x, x))
    assert "aten._native_multi_head_attention" in fused.details["flops_by_operator"]
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in flash.details["flops_by_operator"]
    assert macs(fused) == macs(training) == macs(flash) == ATTENTION_MACS


def test_transformer_encoder_layer_fused_and_training_paths_match_the_hand_formula():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(EMBED, HEADS, FEED_FORWARD, batch_first=True)
    x = torch.randn(BATCH, TOKENS, EMBED)
    expected = ATTENTION_MACS + 2 * BATCH * TOKENS * EMBED * FEED_FORWARD
    training = count(lambda: layer(x))
    layer.eval()
    with torch.no_grad():
        fused = count(lambda: layer(x))
    assert set(fused.details["flops_by_operator"]) == {"aten._transformer_encoder_layer_fwd"}
    assert macs(fused) == macs(training) == expected


def encoder_macs_per_sequence(tokens: int) -> int:
    """One encoder layer on one sequence: projections, attention, feed-forward."""
    return (
        4 * tokens * EMBED * EMBED + 2 * tokens * tokens * EMBED + 2 * tokens * EMBED * FEED_FORWARD
    )


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_a_padded_batch_runs_the_nested_fast_path_and_counts_only_real_tokens():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(EMBED, HEADS, FEED_FORWARD, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    x = torch.randn(BATCH, TOKENS, EMBED)
    padding = torch.zeros(BATCH, TOKENS, dtype=torch.bool)
    padding[0, -2:] = True  # the first sequence has TOKENS - 2 real tokens
    with torch.no_grad():
        reading = count(lambda: encoder(x, src_key_padding_mask=padding))
    per_layer = encoder_macs_per_sequence(TOKENS - 2) + encoder_macs_per_sequence(TOKENS)
    assert macs(reading) == 2 * per_layer
    assert reading.details["uncounted_operators"] == {}


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_nested_tensors_are_counted_sequence_by_sequence():
    lengths = (3, 5)
    linear = nn.Linear(EMBED, 4)
    jagged = torch.nested.nested_tensor(
        [torch.randn(n, EMBED) for n in lengths], layout=torch.jagged, requires_grad=True
    )
    forward = count(lambda: linear(jagged))
    assert macs(forward) == sum(lengths) * EMBED * 4
    training = count(lambda: linear(jagged).values().sum().backward())
    assert macs(training) >= 2 * macs(forward)
    assert training.details["uncounted_operators"] == {}
    left = torch.nested.nested_tensor([torch.randn(n, EMBED) for n in lengths])
    right = torch.nested.nested_tensor([torch.randn(EMBED, 2), torch.randn(EMBED, 4)])
    for product in (torch.bmm, torch.matmul):
        reading = count(lambda product=product: product(left, right))
        assert macs(reading) == 3 * EMBED * 2 + 5 * EMBED * 4, product


def test_scaled_dot_product_attention_forward_and_backward_on_cpu():
    query = torch.randn(BATCH, HEADS, TOKENS, 8, requires_grad=True)
    forward = count(lambda: nn.functional.scaled_dot_product_attention(query, query, query))
    assert set(forward.details["flops_by_operator"]) == {
        "aten._scaled_dot_product_flash_attention_for_cpu"
    }
    assert macs(forward) == 2 * BATCH * HEADS * TOKENS * TOKENS * 8
    output = nn.functional.scaled_dot_product_attention(query, query, query).sum()
    backward = count(output.backward)
    assert backward.details["flops_by_operator"].get(
        "aten._scaled_dot_product_flash_attention_for_cpu_backward", 0
    ) > macs(forward)


def test_grouped_query_attention_counts_every_query_head_forward_and_backward():
    """Llama-style attention: 4 query heads share 2 key/value heads."""
    from torch.utils.flop_counter import sdpa_backward_flop_count

    query = torch.randn(BATCH, 4, TOKENS, 8, requires_grad=True)
    key, value = (torch.randn(BATCH, 2, TOKENS, 8, requires_grad=True) for _ in range(2))
    attend = nn.functional.scaled_dot_product_attention
    output = attend(query, key, value, enable_gqa=True)
    forward = count(lambda: attend(query, key, value, enable_gqa=True))
    backward = count(output.sum().backward)
    assert macs(forward) == 2 * BATCH * 4 * TOKENS * TOKENS * 8
    assert backward.details["uncounted_operators"] == {}
    assert backward.details["flops_by_operator"][
        "aten._scaled_dot_product_flash_attention_for_cpu_backward"
    ] == sdpa_backward_flop_count(query.shape, query.shape, key.shape, value.shape)


def test_two_layer_lstm_forward_and_backward_match_the_hand_formula():
    torch.manual_seed(0)
    inputs, hidden, steps = 8, 16, 5
    lstm = nn.LSTM(inputs, hidden, num_layers=2)
    sequence = torch.randn(steps, BATCH, inputs)
    gates = 4 * hidden
    expected = steps * BATCH * (gates * inputs + gates * hidden + gates * hidden + gates * hidden)
    forward = count(lambda: lstm(sequence))
    assert macs(forward) == expected
    assert forward.details["uncounted_operators"] == {}
    loss = lstm(sequence)[0].sum()
    backward = count(loss.backward)
    assert macs(backward) == 2 * expected
    lstm.eval()
    with torch.no_grad():
        assert macs(count(lambda: lstm(sequence))) == expected


@pytest.mark.parametrize("layer_class", [nn.LSTMCell, nn.GRUCell, nn.RNNCell, nn.GRU, nn.RNN])
def test_other_recurrent_layers_count_their_gate_products(layer_class):
    layer = layer_class(8, 16)
    is_cell = layer_class.__name__.endswith("Cell")
    steps = 1 if is_cell else 3
    x = torch.randn(BATCH, 8) if is_cell else torch.randn(steps, BATCH, 8)
    gates = (layer.weight_ih if is_cell else layer.weight_ih_l0).shape[0]  # 4H, 3H or H
    reading = count(lambda: layer(x))
    assert macs(reading) == steps * BATCH * gates * (8 + 16)
    assert reading.details["uncounted_operators"] == {}


def test_backward_counts_about_twice_the_forward_in_training():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    images = torch.randn(2, 3, 32, 32)
    forward = count(lambda: model(images))
    loss = model(images).sum()
    backward = count(loss.backward)
    # gradients of inputs and of weights; the first convolution needs no input gradient
    assert 1.8 <= backward.flops / forward.flops <= 2.0


@pytest.mark.parametrize("model_name", ["mobilenet_v3_small", "convnext_tiny", "regnet_y_400mf"])
def test_backward_of_grouped_and_depthwise_convolutions_is_twice_the_forward(model_name):
    """torch's flop counter charges a grouped convolution's weight gradient ``groups`` times."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, num_classes=10)
    images = torch.randn(2, 3, 64, 64)
    forward = count(lambda: model(images))
    loss = model(images).sum()
    backward = count(loss.backward)
    assert 1.8 <= backward.flops / forward.flops <= 2.0


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("groups", [1, 4, 16])
def test_a_convolution_backward_counts_one_forward_per_gradient_it_computes(groups, transposed):
    layer = (nn.ConvTranspose2d if transposed else nn.Conv2d)(16, 16, 3, padding=1, groups=groups)
    images = torch.randn(2, 16, 8, 8, requires_grad=True)
    forward = macs(count(lambda: layer(images)))
    both = layer(images).sum()
    assert macs(count(both.backward)) == 2 * forward
    weight_only = layer(images.detach()).sum()
    assert macs(count(weight_only.backward)) == forward


# --- pairwise distances (torch.cdist: RKD, CC and FPGM in the benchmark) ----------------------


def test_cdist_matmul_path_counts_its_gemm_and_the_norms():
    # 30 and 40 rows take the matmul path: aten._euclidean_dist, x1 (B, n, d), x2 (B, m, d)
    x1, x2 = torch.randn(2, 30, 5), torch.randn(2, 40, 5)
    reading = count(lambda: torch.cdist(x1, x2))
    gemm = 2 * 30 * 40 * (5 + 2)  # ‖x‖², 1 and −2x against 1, ‖y‖² and y: d + 2 wide
    norms = 2 * 30 * 5 + 2 * 40 * 5  # one square-and-add per element of each input
    assert reading.details["flops_by_operator"] == {"aten._euclidean_dist": 2 * (gemm + norms)}
    assert reading.details["uncounted_operators"] == {}


def test_cdist_direct_path_counts_one_mac_per_pair_and_dimension_forward_and_backward():
    x1 = torch.randn(10, 5, requires_grad=True)
    x2 = torch.randn(20, 5)
    forward = count(lambda: torch.cdist(x1, x2, p=1))
    assert forward.details["flops_by_operator"] == {"aten._cdist_forward": 2 * 10 * 20 * 5}
    distances = torch.cdist(x1, x2, p=1).sum()
    backward = count(distances.backward)
    assert backward.details["flops_by_operator"] == {"aten._cdist_backward": 2 * 10 * 20 * 5}
    assert backward.details["uncounted_operators"] == {}


def test_a_bilinear_layer_counts_one_mac_per_term_forward_and_backward():
    bilinear = nn.Bilinear(8, 9, 10)
    x1, x2 = torch.randn(3, 8), torch.randn(3, 9)
    forward = count(lambda: bilinear(x1, x2))
    assert forward.details["flops_by_operator"]["aten._trilinear"] == 2 * 3 * 10 * 8 * 9
    assert forward.details["uncounted_operators"] == {}
    training = count(lambda: bilinear(x1, x2).sum().backward())
    assert macs(training) >= 2 * macs(forward)


def test_pairwise_distances_count_one_mac_per_pair_and_dimension_forward_and_backward():
    points = torch.randn(6, 5, requires_grad=True)
    pairs = 6 * 5 // 2
    forward = count(lambda: torch.pdist(points))
    assert forward.details["flops_by_operator"] == {"aten._pdist_forward": 2 * pairs * 5}
    training = count(lambda: torch.pdist(points).sum().backward())
    assert training.details["flops_by_operator"]["aten._pdist_backward"] == 2 * pairs * 5
    assert training.details["uncounted_operators"] == {}


def test_a_complex_multiply_accumulate_counts_four_real_ones():
    real = count(lambda: torch.randn(4, 6) @ torch.randn(6, 5))
    complex_ = count(
        lambda: torch.randn(4, 6, dtype=torch.cfloat) @ torch.randn(6, 5, dtype=torch.cfloat)
    )
    assert macs(real) == 4 * 6 * 5
    assert macs(complex_) == 4 * macs(real)


def test_weight_only_quantized_and_grouped_gemms_count_their_products():
    activations = torch.randn(4, 32)
    int8_weight = torch.randint(-8, 8, (16, 32), dtype=torch.int8)
    int8 = count(
        lambda: torch.ops.aten._weight_int8pack_mm(activations, int8_weight, torch.rand(16))
    )
    assert int8.details["macs_by_precision"] == {"fp32": 4 * 16 * 32}
    tokens = torch.randn(16, 16, dtype=torch.bfloat16)
    experts = torch.randn(2, 16, 8, dtype=torch.bfloat16)
    group_ends = torch.tensor([8, 16], dtype=torch.int32)
    grouped = count(lambda: torch._grouped_mm(tokens, experts, group_ends))
    assert grouped.details["macs_by_precision"] == {"fp16": 16 * 16 * 8}


def test_kernels_that_multiply_are_never_memory_only_though_their_names_hold_a_memory_word():
    from pytest_energy.meters.counted import _is_memory_only

    aten = torch.ops.aten
    for kernel in (
        aten._flash_attention_forward_no_dropout_inplace.default,  # "dropout"
        aten._scaled_dot_product_fused_attention_overrideable_backward.default,  # "prod"
        aten._weight_int4pack_mm_with_scales_and_zeros.default,  # "zero"
        aten.quantized_lstm.input,  # "quantize"
        torch.ops.quantized.int4mm_packed_weight_cpu.default,  # the quantized namespace
    ):
        assert not _is_memory_only(kernel), kernel
    assert _is_memory_only(aten.cummax.default)


# --- low precision ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pt2e_models():
    """A small CNN, its PT2E int8 twin (reference q/dq form) and that twin lowered to oneDNN."""
    pytest.importorskip("torchao")
    import warnings

    from torchao.quantization.pt2e import lowering
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer

    torch.manual_seed(0)
    fp32 = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    example = (torch.randn(1, 3, 32, 32),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = x86_inductor_quantizer.X86InductorQuantizer()
        quantizer.set_global(x86_inductor_quantizer.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(
            torch.export.export(copy.deepcopy(fp32), example).module(), quantizer
        )
        prepared(*example)
        reference = convert_pt2e(prepared)
        lowered = lowering.lower_pt2e_quantized_to_x86(copy.deepcopy(reference), example)
    return fp32, reference, lowered, example


@quantization_warnings
@pytest.mark.parametrize("form", ["reference", "lowered"])
def test_a_pt2e_int8_model_is_counted_at_int8_and_below_its_fp32_twin(pt2e_models, form):
    fp32, reference, lowered, example = pt2e_models
    int8_model = reference if form == "reference" else lowered
    with torch.no_grad():
        full = count(lambda: fp32(*example))
        int8 = count(lambda: int8_model(*example))
    expected = 16 * 3 * 3 * 3 * 32 * 32 + 16 * 10
    assert full.details["macs_by_precision"] == {"fp32": expected}
    assert int8.details["macs_by_precision"] == {"int8": expected}
    if form == "lowered":
        assert {"onednn.qconv_pointwise", "onednn.qlinear_pointwise"} <= set(
            int8.details["flops_by_operator"]
        )
    assert int8.joules_by_domain["compute"] < full.joules_by_domain["compute"] / 10
    if form == "lowered":
        assert int8.bytes_moved < full.bytes_moved
        assert int8.joules < full.joules
    # the reference form really runs quantize/dequantize around fp32 kernels: that traffic
    # is counted, so only its arithmetic is cheaper than the fp32 twin's


@quantization_warnings
@pytest.mark.parametrize(("dtype", "precision"), [(torch.qint8, "int8"), (torch.float16, "fp32")])
def test_dynamically_quantized_recurrent_layers_count_the_float_models_macs(dtype, precision):
    """``quantize_dynamic``'s LSTM and GRU run as one operator with packed weights."""
    torch.manual_seed(0)
    layers = nn.ModuleDict(
        {"lstm": nn.LSTM(16, 32, num_layers=2, bidirectional=True), "gru": nn.GRU(16, 32)}
    ).eval()
    quantized = torch.ao.quantization.quantize_dynamic(layers, {nn.LSTM, nn.GRU}, dtype=dtype)
    sequence = torch.randn(7, 3, 16)
    packed = nn.utils.rnn.pack_padded_sequence(sequence, [7, 5, 2])
    for name in ("lstm", "gru"):
        for inputs in (sequence, packed):
            float_reading = count(lambda name=name, inputs=inputs: layers[name](inputs))
            reading = count(lambda name=name, inputs=inputs: quantized[name](inputs))
            assert reading.details["macs_by_precision"] == {precision: macs(float_reading)}
            assert reading.details["uncounted_operators"] == {}


def test_scaled_mm_in_float8_is_counted_at_low_precision():
    float8 = getattr(torch, "float8_e4m3fn", None)
    if float8 is None:
        pytest.skip("no float8 dtype in this torch")
    a = torch.randn(16, 32).to(float8)
    b = torch.randn(16, 32).to(float8).t()
    one = torch.tensor(1.0)
    try:
        torch._scaled_mm(a, b, one, one, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError) as error:
        pytest.skip(f"_scaled_mm does not run here ({error})")
    reading = count(lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.float32))
    assert reading.details["macs_by_precision"] == {"fp16": 16 * 32 * 16}


# --- what cannot be counted is named ----------------------------------------------------------


def test_an_operator_without_a_formula_is_named_never_a_quiet_zero():
    matrix = torch.randn(6, 6)
    symmetric = matrix @ matrix.T
    reading = count(lambda: [torch.linalg.eigh(symmetric) for _ in range(3)])
    (name,) = [op for op in reading.details["uncounted_operators"] if "eigh" in op]
    assert reading.details["uncounted_operators"][name] == 3
    assert reading.bytes_moved > 0
    warning = uncounted_warning(reading)
    assert warning.startswith(f"compute not counted: 3 calls of {name}")


def test_in_place_gemms_count_as_their_functional_twins():
    accumulator = torch.randn(4, 5)
    left, right = torch.randn(4, 6), torch.randn(6, 5)
    functional = count(lambda: torch.addmm(accumulator, left, right))
    in_place = count(lambda: accumulator.clone().addmm_(left, right))
    assert macs(in_place) == macs(functional) == 4 * 6 * 5
    batched = count(
        lambda: torch.randn(2, 4, 5).baddbmm_(torch.randn(2, 4, 6), torch.randn(2, 6, 5))
    )
    assert macs(batched) == 2 * 4 * 6 * 5
    assert in_place.details["uncounted_operators"] == batched.details["uncounted_operators"] == {}


def test_untagged_element_wise_sampling_and_indexing_operators_are_memory_only():
    x = torch.randn(4, 4)
    reading = count(
        lambda: (
            torch.floor_divide(x, 2),
            torch.rot90(x),
            torch.take(x, torch.tensor([0, 5])),
            torch.trace(x),
            x.clone().exponential_(),
            torch.dist(x, x.T),
        )
    )
    assert reading.details["uncounted_operators"] == {}
    assert reading.bytes_moved > 0


def test_a_formula_that_fails_names_its_operator_and_the_users_code_runs_on(monkeypatch):
    from pytest_energy.meters import counted

    library = torch.library.Library("pytest_energy_test", "DEF")
    library.define("doubled(Tensor x) -> Tensor")
    library.impl("doubled", lambda x: x * 2, "CPU")

    def failing_formula(arguments, out):
        raise ValueError("a bug in a MAC formula")

    monkeypatch.setitem(counted._FORMULAS, "pytest_energy_test.doubled", (failing_formula, ("x",)))
    x = torch.ones(4)
    results = []
    reading = count(lambda: results.append(torch.ops.pytest_energy_test.doubled(x)))
    assert torch.equal(results[0], 2 * x)
    name = "pytest_energy_test.doubled (its MAC formula raised ValueError)"
    assert reading.details["uncounted_operators"] == {name: 1}
    assert uncounted_warning(reading).startswith(f"compute not counted: 1 call of {name}")


def test_memory_only_operators_are_not_reported_as_uncounted():
    x = torch.randn(4, 8, 8, 8)
    norm = nn.BatchNorm2d(8).eval()
    reading = count(
        lambda: nn.functional.max_pool2d(torch.relu(norm(x)), 2).softmax(-1).sum() + x.mean()
    )
    assert reading.details["uncounted_operators"] == {}
    assert uncounted_warning(reading) is None


# --- torch.compile ----------------------------------------------------------------------------


def test_torch_compiled_code_is_counted_like_the_eager_code():
    def invisible_backend(graph, example_inputs):
        """Like inductor's fused kernels: runs the graph where no dispatch mode can see it."""

        def run(*args):
            with torch._C._DisableTorchDispatch():
                return graph(*args)

        return run

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(8, 16)
    compiled = torch.compile(model, backend=invisible_backend)
    compiled(x)  # compiled outside the window, as after a warm-up
    with torch._C._DisableTorchDispatch():
        assert count(lambda: model(x)).flops == 0  # what a compiled kernel would count
    eager = count(lambda: model(x))
    assert eager.flops == 2 * 8 * (16 * 16 + 16 * 4)
    assert dataclasses.replace(count(lambda: compiled(x)), seconds=0) == dataclasses.replace(
        eager, seconds=0
    )


def test_code_compiled_with_fullgraph_is_counted_like_the_eager_code():
    """Under a dispatch mode dynamo compiles no frame, which fullgraph=True takes for an error;
    in a window torch.compile's directives are ignored (its force_eager stance) instead."""
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    x = torch.randn(8, 16)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    compiled(x)
    assert dataclasses.replace(count(lambda: compiled(x)), seconds=0) == dataclasses.replace(
        count(lambda: model(x)), seconds=0
    )
    compiled(x)  # after the window: compiled again, without an error


# --- higher-order operators ---------------------------------------------------------------------

SQUARE = 4
"""Side of the square matrices the control-flow tests multiply: one product is SQUARE³ MACs."""


def test_the_branch_torch_cond_takes_is_counted():
    weight = torch.randn(SQUARE, SQUARE)
    x = torch.randn(SQUARE, SQUARE)

    def branch_taken(predicate):
        return count(lambda: torch.cond(predicate, lambda t: t @ weight, lambda t: t + 1, (x,)))

    assert macs(branch_taken(torch.tensor(True))) == SQUARE**3
    assert macs(branch_taken(torch.tensor(False))) == 0  # an add: its bytes only
    assert branch_taken(torch.tensor(False)).details["uncounted_operators"] == {}


def test_every_iteration_of_while_loop_scan_and_map_is_counted():
    from torch._higher_order_ops.map import map as map_over
    from torch._higher_order_ops.scan import scan
    from torch._higher_order_ops.while_loop import while_loop

    weight = torch.randn(SQUARE, SQUARE)
    x = torch.randn(SQUARE, SQUARE)
    three = torch.randn(3, SQUARE, SQUARE)
    readings = {
        "while_loop": count(
            lambda: while_loop(
                lambda i, t: i < 3, lambda i, t: (i + 1, t @ weight), (torch.tensor(0), x)
            )
        ),
        "scan": count(lambda: scan(lambda carry, t: (carry @ t, carry.clone()), x, three)),
        "map": count(lambda: map_over(lambda t: t @ weight, three)),
    }
    for reading in readings.values():
        assert macs(reading) == 3 * SQUARE**3
        assert reading.details["uncounted_operators"] == {}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("key_value_heads", [2, 1])
def test_flex_attention_is_counted_as_the_dense_attention_it_computes(key_value_heads):
    """Eager flex_attention compiles itself; in a window it runs its higher-order operator,
    counted as scaled-dot-product attention with the same shapes."""
    from torch.nn.attention.flex_attention import flex_attention

    query = torch.randn(BATCH, 2, TOKENS, 8)
    key, value = (torch.randn(BATCH, key_value_heads, TOKENS, 8) for _ in range(2))
    gqa = key_value_heads != 2

    def relative_position(score, batch, head, query_index, key_index):
        return score + (query_index - key_index)

    flex = count(lambda: flex_attention(query, key, value, relative_position, enable_gqa=gqa))
    sdpa = count(
        lambda: nn.functional.scaled_dot_product_attention(query, key, value, enable_gqa=gqa)
    )
    assert flex.details["flops_by_operator"]["higher_order.flex_attention"] == sdpa.flops
    assert flex.details["uncounted_operators"] == {}


def test_flex_attentions_backward_counts_as_scaled_dot_product_attentions():
    """flex_attention's backward runs on GPUs only; its formula is checked on its arguments."""
    from torch.utils.flop_counter import sdpa_backward_flop_count

    from pytest_energy.meters.counted import _HIGHER_ORDER_FORMULAS

    formula, names = _HIGHER_ORDER_FORMULAS["flex_attention_backward"]
    query, out = torch.empty(BATCH, 4, TOKENS, 8), torch.empty(BATCH, 4, TOKENS, 8)
    key = value = torch.empty(BATCH, 2, TOKENS, 8)
    expected = sdpa_backward_flop_count(out.shape, query.shape, key.shape, value.shape)
    arguments = dict(zip(names, (query, key, value, out, None, out), strict=True))
    assert formula(arguments, None) == expected
    assert formula({**arguments, "grad_out": None}, None) == expected  # out's shape then


def test_a_higher_order_operator_given_no_function_and_no_formula_is_named():
    from torch._C import DispatchKey
    from torch._ops import HigherOrderOperator

    class OpaqueKernel(HigherOrderOperator):
        def __init__(self) -> None:
            super().__init__("opaque_kernel")

        def __call__(self, x):
            return super().__call__(x)

    opaque_kernel = OpaqueKernel()
    opaque_kernel.py_impl(DispatchKey.CompositeExplicitAutograd)(lambda x: x * 2)
    opaque_kernel.fallthrough(DispatchKey.AutogradCPU)
    reading = count(lambda: opaque_kernel(torch.randn(3)))
    assert reading.details["uncounted_operators"] == {"higher_order.opaque_kernel": 1}


# --- what the user sees -----------------------------------------------------------------------

UNCOUNTED_LIFECYCLE_TEST = """
import torch

def test_spectral(energy):
    matrix = torch.randn(6, 6)
    symmetric = matrix @ matrix.T
    with energy.train("fit"):
        torch.linalg.eigh(symmetric)
    energy.inference(lambda: torch.linalg.eigh(symmetric), rounds=1, warmup=1)
"""


def test_the_summary_warns_which_operators_were_not_counted(pytester):
    pytester.makepyfile(test_spectral=UNCOUNTED_LIFECYCLE_TEST)
    result = pytester.runpytest("--energy", "--energy-meter", "counted", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*warning: *test_spectral*counted train phase 'fit': compute not counted: "
            "1 call of aten.*eigh*",
            "*warning: *test_spectral*counted inference: compute not counted: "
            "1 call of aten.*eigh*",
        ]
    )


COMPILED_LIFECYCLE_TEST = """
import torch
from torch import nn

class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(16, 16)

    def forward(self, x):
        return torch.cond(x.sum() > -1e9, self.layer, torch.neg, (x,))

def test_compiled(energy):
    layer = nn.Linear(16, 16)
    compiled_layer = torch.compile(layer, backend="eager", fullgraph=True)
    gated = torch.compile(Gated(), backend="eager", fullgraph=True)
    x = torch.randn(8, 16)
    with energy.train("fit"):
        compiled_layer(x).sum().backward()
    with torch.no_grad():
        energy.inference(lambda: gated(x), rounds=2, warmup=1)
"""


def test_a_users_fullgraph_compiled_model_with_control_flow_is_measured(pytester):
    pytester.makepyfile(test_compiled=COMPILED_LIFECYCLE_TEST)
    result = pytester.runpytest(
        "--energy", "--energy-meter", "cputime,counted", "--energy-json", "r.json"
    )
    result.assert_outcomes(passed=1)
    assert "not counted" not in result.stdout.str()
    counted = json.loads((pytester.path / "r.json").read_text())["tests"][
        "test_compiled.py::test_compiled"
    ]["meters"]["counted"]
    assert counted["iec_joules_per_sample"] > 0
    assert counted["tec_joules"] > 0


# --- breakdown ----------------------------------------------------------------------------------


def test_breakdown_by_operator_and_by_module_adds_up_to_the_reading():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = count(lambda: model(images))
        broken_down = count(lambda: model(images), breakdown=True)
    assert "by_operator" not in plain.details and "by_module" not in plain.details
    assert dataclasses.replace(broken_down, seconds=0, details={}) == dataclasses.replace(
        plain, seconds=0, details={}
    )
    by_operator = broken_down.details["by_operator"]
    assert by_operator["aten.convolution"]["calls"] == 1
    assert by_operator["aten.convolution"]["flops"] == 2 * 2 * 8 * 3 * 3 * 3 * 6 * 6
    assert set(by_operator["aten.addmm"]) == {"calls", "flops", "bytes", "joules"}
    by_module = broken_down.details["by_module"]
    assert by_module["Sequential.0"]["flops"] == by_operator["aten.convolution"]["flops"]
    assert by_module["Sequential.3"]["flops"] == by_operator["aten.addmm"]["flops"]
    for rows in (by_operator, by_module):
        assert sum(row["flops"] for row in rows.values()) == broken_down.flops
        assert sum(row["bytes"] for row in rows.values()) == broken_down.bytes_moved
        assert sum(row["joules"] for row in rows.values()) == pytest.approx(broken_down.joules)


def test_torch_export_inside_a_counted_window_traces_without_specialising_the_batch():
    """Tracing is shapes, not work: a dynamic batch stays dynamic and nothing is charged."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    batch = torch.export.Dim("batch", min=1)

    def export() -> torch.nn.Module:
        return torch.export.export(
            model, (torch.randn(2, 4),), dynamic_shapes=({0: batch},)
        ).module()

    holder: list[torch.nn.Module] = []
    reading = count(lambda: holder.append(export()))
    assert holder[0](torch.randn(5, 4)).shape == (5, 2)
    assert reading.flops < 2 * 2 * (4 * 8 + 8 * 2)  # not even one real forward pass counted
