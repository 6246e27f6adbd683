// The C++ half of torsion-qt: one QSocketNotifier on the reactor's poller fd
// and one single-shot QTimer; every decision is made by the Rust HostDriver.
#pragma once
#include <cstdint>
#include <memory>

#include <QCoreApplication>
#include <QGuiApplication>
#include <QEventLoop>
#include <QSocketNotifier>
#include <QTimer>

#include "rust/cxx.h"

namespace torsion_qt {

struct QtDriver;

class QtHost {
public:
    QtHost(int32_t fd, rust::Box<QtDriver> driver);
    ~QtHost();
    // -2: keep the timer, -1: stop it, n >= 0: fire once in n ms.
    void apply(int64_t plan) const;

private:
    // Declared first so it is destroyed last, after the notifier and timer
    // whose callbacks use it.
    rust::Box<QtDriver> driver_;
    QSocketNotifier notifier_;
    mutable QTimer timer_;
};

std::unique_ptr<QtHost> new_qt_host(int32_t fd, rust::Box<QtDriver> driver);

class EventLoop {
public:
    // const so Rust can call quit() while run() is on the stack.
    void run() const;
    void quit() const;
    bool is_running() const;

private:
    mutable QEventLoop loop_;
};

std::unique_ptr<EventLoop> new_event_loop();

class CoreApp {
public:
    explicit CoreApp(bool gui);
    ~CoreApp();

private:
    std::unique_ptr<QCoreApplication> app_;
};

bool has_application();
std::unique_ptr<CoreApp> new_core_application();
std::unique_ptr<CoreApp> new_gui_application();

} // namespace torsion_qt
