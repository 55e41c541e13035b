"""The one place that imports Qt, so that Krita 6 (Qt 6, PyQt6) needs changes here only.

Krita loads its own PyQt before any plugin; we take the same one (PyQt6 if Krita already imported it, else PyQt5),
never a second Qt binding that happens to be installed.
"""

from __future__ import annotations

import sys

if "PyQt6.QtCore" in sys.modules:  # pragma: no cover - Krita 6
    from PyQt6 import QtCore, QtGui, QtWidgets

    QT6 = True
else:
    try:
        from PyQt5 import QtCore, QtGui, QtWidgets

        QT6 = False
    except ImportError:  # pragma: no cover - a Qt 6 Krita that has not imported PyQt6 yet
        from PyQt6 import QtCore, QtGui, QtWidgets

        QT6 = True

Qt = QtCore.Qt
QObject = QtCore.QObject
QTimer = QtCore.QTimer
QEventLoop = QtCore.QEventLoop
pyqtSignal = QtCore.pyqtSignal

QWidget = QtWidgets.QWidget
QVBoxLayout = QtWidgets.QVBoxLayout
QHBoxLayout = QtWidgets.QHBoxLayout
QFormLayout = QtWidgets.QFormLayout
QGroupBox = QtWidgets.QGroupBox
QLabel = QtWidgets.QLabel
QLineEdit = QtWidgets.QLineEdit
QPlainTextEdit = QtWidgets.QPlainTextEdit
QSpinBox = QtWidgets.QSpinBox
QDoubleSpinBox = QtWidgets.QDoubleSpinBox
QComboBox = QtWidgets.QComboBox
QCheckBox = QtWidgets.QCheckBox
QPushButton = QtWidgets.QPushButton
QProgressBar = QtWidgets.QProgressBar
QFileDialog = QtWidgets.QFileDialog
QScrollArea = QtWidgets.QScrollArea
QToolButton = QtWidgets.QToolButton
QListWidget = QtWidgets.QListWidget
QListWidgetItem = QtWidgets.QListWidgetItem
QSizePolicy = QtWidgets.QSizePolicy
QImage = QtGui.QImage
QPixmap = QtGui.QPixmap
QIcon = QtGui.QIcon
QSize = QtCore.QSize


def exec_loop(loop: QtCore.QEventLoop) -> int:
    """Run a local event loop (`exec_` is gone in PyQt6; PyQt5 5.15 has both)."""
    return loop.exec() if hasattr(loop, "exec") else loop.exec_()


def rich_text_off(label: QtWidgets.QLabel) -> None:
    """Show messages literally (server errors may contain '<'). Scoped enums work in PyQt5 5.15 and PyQt6."""
    label.setTextFormat(Qt.TextFormat.PlainText)


__all__ = [
    "QT6",
    "Qt",
    "QObject",
    "QTimer",
    "QEventLoop",
    "pyqtSignal",
    "QWidget",
    "QVBoxLayout",
    "QHBoxLayout",
    "QFormLayout",
    "QGroupBox",
    "QLabel",
    "QLineEdit",
    "QPlainTextEdit",
    "QSpinBox",
    "QDoubleSpinBox",
    "QComboBox",
    "QCheckBox",
    "QPushButton",
    "QProgressBar",
    "QFileDialog",
    "QScrollArea",
    "QToolButton",
    "QListWidget",
    "QListWidgetItem",
    "QSizePolicy",
    "QImage",
    "QPixmap",
    "QIcon",
    "QSize",
    "QtGui",
    "exec_loop",
    "rich_text_off",
]
