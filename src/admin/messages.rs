//! What the admin screens show: each status and reason code with a sentence in Japanese and in
//! English. Codes are stable (screens and scripts branch on them); the sentences may change.

use serde::Serialize;

use crate::tenants::UserStatus;

/// One sentence in both languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Text {
    pub ja: &'static str,
    pub en: &'static str,
}

const fn t(ja: &'static str, en: &'static str) -> Text {
    Text { ja, en }
}

/// 認証済み / 認証失敗.
pub fn status_label(status: UserStatus) -> Text {
    match status {
        UserStatus::Authenticated => t("認証済み", "Authenticated"),
        UserStatus::AuthFailed => t("認証失敗", "Authentication failed"),
    }
}

/// The sentence for a reason code (users, credentials, plans, bulk rows, API errors).
pub fn reason(code: &str) -> Text {
    match code {
        // Linked users (also what the flush records when writes fail).
        "unknown_user" => t(
            "このアドレスは会社のMicrosoftテナントのユーザーではありません",
            "The address is not a user of the company's Microsoft tenant",
        ),
        "no_mailbox" => t(
            "このユーザーにはExchange Onlineのメールボックスがありません（ライセンス未割り当て、または非アクティブ）",
            "The user has no Exchange Online mailbox (no licence, or inactive)",
        ),
        "policy_denied" => t(
            "アプリケーションアクセスポリシーにより、このメールボックスへのアクセスが拒否されています",
            "An application access policy denies the app access to this mailbox",
        ),
        "access_denied" => t(
            "アクセスが拒否されました。アプリのアクセス許可（Calendars.ReadWrite、User.Read.All）と管理者の同意を確認してください",
            "Access denied: check the app's permissions (Calendars.ReadWrite, User.Read.All) and the admin consent",
        ),
        "credentials_invalid" => t(
            "会社のMicrosoft 365連携の認証情報が無効です",
            "The company's Microsoft 365 credentials are not valid",
        ),
        "graph_rejected" => t(
            "Microsoft Graphがリクエストを拒否しました",
            "Microsoft Graph refused the request",
        ),
        "retries_exhausted" => t(
            "Microsoftが混雑しているため、書き込みに繰り返し失敗しました",
            "Writes kept failing because Microsoft was busy",
        ),
        "verification_unavailable" => t(
            "Microsoftに接続できないため確認できませんでした。しばらくしてから再度お試しください",
            "Microsoft could not be reached to verify; try again later",
        ),
        // Credentials.
        "ok" => t(
            "認証情報とアクセス許可を確認しました",
            "The credentials and permissions are in order",
        ),
        "invalid_secret" => t(
            "クライアントシークレットが正しくありません（シークレットIDではなく値を入力してください）",
            "The client secret is invalid (enter the secret's value, not its ID)",
        ),
        "expired_secret" => t(
            "クライアントシークレットの有効期限が切れています。Azureポータルで新しいシークレットを作成してください",
            "The client secret has expired: create a new one in the Azure portal",
        ),
        "app_not_in_tenant" => t(
            "このテナントにアプリケーション（クライアントID）が見つかりません",
            "The application (client ID) was not found in the tenant",
        ),
        "tenant_not_found" => t("テナントIDが見つかりません", "The tenant ID was not found"),
        "permission_not_granted" => t(
            "必要なアクセス許可が付与されていません（管理者の同意が必要です）",
            "A required permission is not granted (admin consent is needed)",
        ),
        "permission_recommended" => t(
            "推奨されるアクセス許可（Contacts.Read）が付与されていません",
            "A recommended permission (Contacts.Read) is not granted",
        ),
        "token_endpoint_error" => t(
            "Microsoftのトークン発行が認証情報を拒否しました",
            "Microsoft's token endpoint refused the credentials",
        ),
        "secret_expiring" => t(
            "クライアントシークレットの有効期限が近づいています",
            "The client secret expires soon",
        ),
        "secret_expired" => t(
            "記録されたクライアントシークレットの有効期限を過ぎています",
            "The recorded client secret expiry date has passed",
        ),
        "credentials_unreadable" => t(
            "保存された認証情報を復号できません（暗号鍵の設定を確認してください）",
            "The stored credentials cannot be decrypted (check the encryption keys)",
        ),
        "no_credentials" => t(
            "Microsoft 365連携の認証情報が設定されていません",
            "The Microsoft 365 credentials are not set",
        ),
        // Plans.
        "plan_excludes_integration" => t(
            "Liteプランではカレンダー連携オプションを利用できません",
            "The Lite plan cannot use the calendar integration",
        ),
        "lite_plus_without_schedule_option" => t(
            "Lite Plusプランでは予定オプションの契約が必要です",
            "The Lite Plus plan needs the schedule option for the calendar integration",
        ),
        "integration_disabled" => t("連携が無効です", "The integration is turned off"),
        // Bulk rows.
        "malformed_address" => t(
            "メールアドレスの形式が正しくありません",
            "The address is not a well-formed email address",
        ),
        "non_ascii_address" => t(
            "メールアドレスに全角文字などASCII以外の文字が含まれています。MicrosoftのサインインID(UPN)を半角で入力してください",
            "The address has characters outside ASCII (full-width letters, for example); type the user's Microsoft sign-in name (UPN) in half-width characters",
        ),
        "duplicate_row" => t(
            "同じユーザーまたはアドレスの行がファイル内で重複しています",
            "The file has another row for this user or address",
        ),
        "already_linked" => t(
            "すでにこのアドレスで連携済みです",
            "Already linked to this address",
        ),
        "address_in_use" => t(
            "このアドレスは別のユーザーに連携されています",
            "The address is linked to another user",
        ),
        "not_linked" => t("連携されていません", "Not linked"),
        "missing_user_id" => t("ユーザーIDがありません", "The user id is missing"),
        "invalid_user_id" => t(
            "ユーザーIDに使用できない文字が含まれています",
            "The user id has characters that are not allowed",
        ),
        "invalid_action" => t(
            "操作は link または unlink を指定してください",
            "The action must be link or unlink",
        ),
        "malformed_row" => t("行の形式が正しくありません", "The row is malformed"),
        _ => t("エラーが発生しました", "An error occurred"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_the_pipeline_records_has_its_own_sentence() {
        let generic = reason("no-such-code");
        for code in [
            "unknown_user",
            "no_mailbox",
            "policy_denied",
            "access_denied",
            "invalid_secret",
            "expired_secret",
            "app_not_in_tenant",
            "tenant_not_found",
            "permission_not_granted",
            "plan_excludes_integration",
            "lite_plus_without_schedule_option",
            "malformed_address",
            "non_ascii_address",
            "duplicate_row",
            "already_linked",
        ] {
            assert_ne!(reason(code), generic, "{code}");
        }
        assert_eq!(status_label(UserStatus::Authenticated).ja, "認証済み");
        assert_eq!(status_label(UserStatus::AuthFailed).ja, "認証失敗");
    }
}
