#include "torsion-qt/include/bridge.h"
#include "torsion-qt/src/lib.rs.h"

namespace torsion_qt {

QtHost::QtHost(int32_t fd, rust::Box<QtDriver> driver)
    : driver_(std::move(driver)), notifier_(fd, QSocketNotifier::Read) {
    timer_.setSingleShot(true);
    // Reactor deadlines are in milliseconds; coarse timers may fire 5% late.
    timer_.setTimerType(Qt::PreciseTimer);
    QObject::connect(&notifier_, &QSocketNotifier::activated,
                     [this]() { apply(on_fd_ready(*driver_)); });
    QObject::connect(&timer_, &QTimer::timeout,
                     [this]() { apply(on_timer(*driver_)); });
    notifier_.setEnabled(true);
}

QtHost::~QtHost() {
    notifier_.setEnabled(false);
    timer_.stop();
}

void QtHost::apply(int64_t plan) const {
    if (plan == -2) {
        return;
    }
    if (plan < 0) {
        timer_.stop();
        return;
    }
    const int64_t max_ms = 0x7fffffff;
    timer_.start(static_cast<int>(plan > max_ms ? max_ms : plan));
}

std::unique_ptr<QtHost> new_qt_host(int32_t fd, rust::Box<QtDriver> driver) {
    return std::make_unique<QtHost>(fd, std::move(driver));
}

void EventLoop::run() const { loop_.exec(); }
void EventLoop::quit() const { loop_.quit(); }
bool EventLoop::is_running() const { return loop_.isRunning(); }

std::unique_ptr<EventLoop> new_event_loop() { return std::make_unique<EventLoop>(); }

namespace {
int app_argc = 1;
char app_arg0[] = "torsion";
char* app_argv[] = {app_arg0, nullptr};
} // namespace

CoreApp::CoreApp(bool gui)
    : app_(gui ? new QGuiApplication(app_argc, app_argv)
               : new QCoreApplication(app_argc, app_argv)) {}
CoreApp::~CoreApp() = default;

bool has_application() { return QCoreApplication::instance() != nullptr; }

std::unique_ptr<CoreApp> new_core_application() { return std::make_unique<CoreApp>(false); }
std::unique_ptr<CoreApp> new_gui_application() { return std::make_unique<CoreApp>(true); }

} // namespace torsion_qt
