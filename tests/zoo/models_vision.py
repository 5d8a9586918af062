"""Image models of the zoo, each written the way the public code it imitates is written.

These are deliberately *not* in this project's style: the point of the zoo is to feed the pipeline the idioms
users' models arrive with (shape guards, ``nn.Conv2d`` subclasses with their own ``forward``, functional
padding, in-place ReLU modules reused several times, ``F.interpolate``, ``torch.cat`` skips). Idioms are
copied from the originals named in each docstring; the code is written here.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------
# a. MNIST classifier with a shape-checking forward (pytorch/examples mnist/main.py layout, plus the input
#    guard that published MNIST packages put in front of it)
# ---------------------------------------------------------------------------------------------------------


class ShapeCheckedClassifier(nn.Module):
    """pytorch/examples' MNIST ``Net`` (two convs, max-pool, dropout, two linears, log_softmax) at small width."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(2304, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"Expected input of shape (N, 1, 28, 28), got {tuple(x.shape)}")
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


# ---------------------------------------------------------------------------------------------------------
# c. EfficientNet-Lite / MobileNetV3-style net ported from TensorFlow ("same" padding): the
#    Conv2dDynamicSamePadding / Conv2dStaticSamePadding pair of lukemelas/EfficientNet-PyTorch and
#    timm's conv2d_same, depthwise MBConv blocks with squeeze-excite, Swish, a hard-swish head.
# ---------------------------------------------------------------------------------------------------------


def get_same_padding(x: int, k: int, s: int, d: int) -> int:
    # TF "SAME": output = ceil(input / stride); the odd pixel of padding goes bottom/right.
    return max((math.ceil(x / s) - 1) * s + (k - 1) * d + 1 - x, 0)


class Conv2dSame(nn.Conv2d):
    """Dynamic 'SAME' padding computed from the input size in forward, then a padding-free F.conv2d."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x):
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.size()[-2:]
        pad_h = get_same_padding(ih, kh, self.stride[0], self.dilation[0])
        pad_w = get_same_padding(iw, kw, self.stride[1], self.dilation[1])
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Conv2dStaticSamePadding(nn.Conv2d):
    """'SAME' padding fixed at construction for a known image size, applied by an nn.ZeroPad2d."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, image_size=None, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, **kwargs)
        self.stride = self.stride if len(self.stride) == 2 else [self.stride[0]] * 2
        ih, iw = (image_size, image_size) if isinstance(image_size, int) else image_size
        kh, kw = self.weight.size()[-2:]
        sh, sw = self.stride
        pad_h = get_same_padding(ih, kh, sh, self.dilation[0])
        pad_w = get_same_padding(iw, kw, sw, self.dilation[1])
        if pad_h > 0 or pad_w > 0:
            self.static_padding = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        else:
            self.static_padding = nn.Identity()

    def forward(self, x):
        x = self.static_padding(x)
        x = F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return x


class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite: mean over H, W, reduce conv, act, expand conv, sigmoid gate."""

    def __init__(self, in_chs, rd_chs, act_layer=nn.SiLU, gate_layer=nn.Sigmoid):
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_chs, rd_chs, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd_chs, in_chs, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_reduce(x_se)
        x_se = self.act1(x_se)
        x_se = self.conv_expand(x_se)
        return x * self.gate(x_se)


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand, depthwise kxk (SAME), SE, 1x1 project; identity skip when shapes allow."""

    def __init__(self, in_chs, out_chs, dw_kernel_size=3, stride=1, exp_ratio=4.0, se_ratio=0.25):
        super().__init__()
        mid_chs = int(in_chs * exp_ratio)
        self.has_skip = in_chs == out_chs and stride == 1
        self.conv_pw = Conv2dSame(in_chs, mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_dw = Conv2dSame(mid_chs, mid_chs, dw_kernel_size, stride=stride, groups=mid_chs, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = nn.SiLU(inplace=True)
        self.se = SqueezeExcite(mid_chs, max(1, int(in_chs * se_ratio)))
        self.conv_pwl = Conv2dSame(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)

    def forward(self, x):
        shortcut = x
        x = self.conv_pw(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv_dw(x)
        x = self.bn2(x)
        x = self.act2(x)
        x = self.se(x)
        x = self.conv_pwl(x)
        x = self.bn3(x)
        if self.has_skip:
            x = x + shortcut
        return x


class EfficientLiteStyle(nn.Module):
    """A small EfficientNet-B0-shaped network for 32x32 RGB input (stem, 6 MBConv blocks, hard-swish head).

    Channel widths follow Lite0's proportions (most weights in the late 1x1 convs and the 1280-wide head), so
    per-channel overhead (scales, int32 biases) weighs in the file as it does in the real network.
    """

    def __init__(self, num_classes=10, image_size=32, drop_rate=0.2):
        super().__init__()
        self.conv_stem = Conv2dStaticSamePadding(3, 32, 3, stride=2, image_size=image_size, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.SiLU(inplace=True)
        self.blocks = nn.Sequential(
            InvertedResidual(32, 32, 3, stride=1, exp_ratio=1.0),
            InvertedResidual(32, 48, 3, stride=2),
            InvertedResidual(48, 48, 3, stride=1),
            InvertedResidual(48, 80, 5, stride=2),
            InvertedResidual(80, 112, 3, stride=1),
            InvertedResidual(112, 192, 5, stride=2),
        )
        self.conv_head = Conv2dSame(192, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.act2 = nn.Hardswish(inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop_rate = drop_rate
        self.classifier = nn.Linear(1280, num_classes)

    def forward_features(self, x):
        x = self.conv_stem(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.blocks(x)
        x = self.conv_head(x)
        x = self.bn2(x)
        x = self.act2(x)
        return x

    def forward(self, x):
        x = self.forward_features(x)
        x = self.global_pool(x).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)


# ---------------------------------------------------------------------------------------------------------
# d. torchvision.models.resnet: conv3x3/conv1x1 helpers, BasicBlock with one in-place ReLU module used twice,
#    downsample Sequential, _make_layer, kaiming init loop, torch.flatten(x, 1).
# ---------------------------------------------------------------------------------------------------------


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    """3x3 convolution with padding"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    """1x1 convolution"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class TorchvisionStyleResNet(nn.Module):
    """torchvision's ResNet with BasicBlock, layers [1, 1, 1, 1] and widths 16..128 (a tiny ResNet-10)."""

    def __init__(self, block=BasicBlock, layers=(1, 1, 1, 1), num_classes=10, width=16, norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        norm_layer = self._norm_layer
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )

        layers = []
        layers.append(block(self.inplanes, planes, stride, downsample, norm_layer))
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, norm_layer=norm_layer))

        return nn.Sequential(*layers)

    def _forward_impl(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x

    def forward(self, x):
        return self._forward_impl(x)


# ---------------------------------------------------------------------------------------------------------
# g. U-Net in the layout of milesial/Pytorch-UNet (DoubleConv, Down, Up with the F.pad size fix, OutConv),
#    with one transposed-conv up path and one F.interpolate up path.
# ---------------------------------------------------------------------------------------------------------


class DoubleConv(nn.Module):
    """(convolution => [BN] => ReLU) * 2"""

    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    """Downscaling with maxpool then double conv"""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upscaling then double conv; bilinear uses F.interpolate, otherwise a ConvTranspose2d."""

    def __init__(self, in_channels, out_channels, bilinear=True):
        super().__init__()
        self.bilinear = bilinear
        if bilinear:
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        if self.bilinear:
            x1 = F.interpolate(x1, scale_factor=2, mode="bilinear", align_corners=False)
        else:
            x1 = self.up(x1)
        # input is CHW
        diffY = x2.size()[2] - x1.size()[2]
        diffX = x2.size()[3] - x1.size()[3]

        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class OutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class SmallUNet(nn.Module):
    """Two-level U-Net: 1 input channel, n_classes logits per pixel (background / square / disc)."""

    def __init__(self, n_channels=1, n_classes=3, width=16):
        super().__init__()
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.inc = DoubleConv(n_channels, width)
        self.down1 = Down(width, width * 2)
        self.down2 = Down(width * 2, width * 4)
        self.up1 = Up(width * 4, width * 2, bilinear=False)  # ConvTranspose2d path
        self.up2 = Up(width * 2 + width, width, bilinear=True)  # F.interpolate path
        self.outc = OutConv(width, n_classes)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x = self.up1(x3, x2)
        x = self.up2(x, x1)
        logits = self.outc(x)
        return logits
